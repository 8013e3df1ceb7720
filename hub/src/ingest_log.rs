//! The feeds' recent ingests for the console's Feeds view (`GET /admin/feeds`): every ingest —
//! over the admin API or offline with `edge-hub ingest` — with what it accepted, the lines it
//! rejected and why, and its warnings (the first [`crate::server::RECENT_INGEST_LINES`] of each;
//! the counts are whole). Kept in the hub's sled database, or `ingest_log` on PostgreSQL
//! (migration 8), so it survives a restart and every hub on a database shows every hub's
//! ingests; the latest [`KEEP`] are kept.
//!
//! A rejection's reason can quote the bundle (an identifier that failed its check): the log is
//! read only by the `fleet` role, and it lives beside the summaries themselves.

use std::sync::Arc;

use crate::store::StoreError;

/// How many ingests are kept.
pub const KEEP: usize = 200;

/// Where the log is kept.
#[derive(Debug)]
pub enum IngestLog {
    /// The log's tree, and its database (for ids that never repeat, even between two writers
    /// at once or across restarts).
    Sled(sled::Tree, sled::Db),
    Pg(Arc<crate::pg::PgStore>),
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: "ingest_log".into(),
        why: e.to_string(),
    }
}

/// One ingest's entry: when, who (an operator, or `None` offline), how (`admin-api` or
/// `offline`), the feed it was labelled with, and the report's counts and first lines.
pub fn entry(
    at: edge_proto::time::UnixMillis,
    operator_id: Option<&str>,
    via: &str,
    feed: &serde_json::Value,
    report: &crate::store::IngestReport,
) -> serde_json::Value {
    let n = crate::server::RECENT_INGEST_LINES;
    serde_json::json!({
        "at": at.to_rfc3339(),
        "operator_id": operator_id,
        "via": via,
        "feed": feed["feed"],
        "source": feed["source"],
        "snapshot": feed["snapshot"],
        "file": feed["file"],
        "accepted": report.accepted,
        "rejected_total": report.rejected.len(),
        "rejected": report.rejected.iter().take(n).collect::<Vec<_>>(),
        "warnings_total": report.warnings_total,
        "warnings": report.warnings.iter().take(n).collect::<Vec<_>>(),
        "changed": report.changed,
    })
}

impl IngestLog {
    /// The log in a sled database.
    pub fn open(db: &sled::Db) -> Result<IngestLog, StoreError> {
        Ok(IngestLog::Sled(db.open_tree("ingest_log")?, db.clone()))
    }

    /// The log where `hub` keeps it: the shared database, else its sled database.
    pub fn of_hub(hub: &crate::server::Hub) -> Result<IngestLog, StoreError> {
        Ok(match &hub.shared {
            Some(pg) => IngestLog::Pg(pg.clone()),
            None => IngestLog::open(&hub.local)?,
        })
    }

    /// Add an entry (durable on return) and drop all but the latest [`KEEP`].
    pub fn record(&self, entry: &serde_json::Value) -> Result<(), StoreError> {
        match self {
            IngestLog::Sled(t, db) => {
                let id = db.generate_id()?;
                t.insert(
                    id.to_be_bytes(),
                    serde_json::to_vec(entry).map_err(corrupt)?,
                )?;
                let excess = t.len().saturating_sub(KEEP);
                let old: Vec<sled::IVec> =
                    t.iter().keys().take(excess).collect::<Result<_, _>>()?;
                for k in old {
                    t.remove(k)?;
                }
                t.flush()?;
                Ok(())
            }
            IngestLog::Pg(p) => p.ingest_log_record(entry, KEEP),
        }
    }

    /// The latest `n` entries, newest first.
    pub fn latest(&self, n: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        match self {
            IngestLog::Sled(t, _) => t
                .iter()
                .values()
                .rev()
                .take(n)
                .map(|v| serde_json::from_slice(&v?).map_err(corrupt))
                .collect(),
            IngestLog::Pg(p) => p.ingest_log_latest(n),
        }
    }
}
