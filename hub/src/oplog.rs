//! The operator log: every admin API call, with the operator's identity, read with
//! `GET /admin/operator-log` (privacy role). Kept in the sled tree `operator_log` of the hub's
//! database, or, on PostgreSQL, in the table `operator_log` every hub on the database shares
//! (`migrations/0002_audit.sql`).
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `operator_log` | id (u64 BE, from sled's monotonic id generator) | [`OperatorLogEntry`] (JSON) |
//!
//! An entry names who called (operator id, name and role from the verified operator token, or
//! nothing when the call was refused before a token was verified), the method, the matched
//! route, the query string the call gave (an audit query's `patient=` NHS number is kept here
//! and nowhere else), the status and the time. Request bodies (bundles, objections) are never
//! recorded. Entries are written durably before the answer leaves the hub.

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// The longest query string kept in an entry (longer ones are cut, marked with `…`).
pub const MAX_QUERY_LEN: usize = 512;

/// One admin call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorLogEntry {
    /// RFC 3339 time the call was answered.
    pub at: String,
    /// The verified operator id, when a valid token was presented.
    pub operator_id: Option<String>,
    /// The operator's display name from the token.
    pub operator_name: Option<String>,
    /// `fleet` or `privacy`.
    pub role: Option<String>,
    /// The operator token's id (for `edge-provision token-revoke --token-id`).
    pub token_id: Option<String>,
    /// HTTP method.
    pub method: String,
    /// The route template (e.g. `/admin/audit`), or the path when no route matched.
    pub route: String,
    /// The query string as given (parameters the caller named), cut at [`MAX_QUERY_LEN`].
    pub query: Option<String>,
    /// The answer's HTTP status.
    pub status: u16,
    /// The refusal's error code (`no_token`, `role`, `cross_site`, …) when refused.
    pub refused: Option<String>,
    /// What the call acted on, from its body: `wipe DEVICE` (`(cancelled)`), `cohort DEVICE =
    /// SPECS`, `objection NHS-NUMBER` — also when it was refused as an unknown device.
    #[serde(default)]
    pub target: Option<String>,
}

/// The operator log.
#[derive(Debug, Clone)]
pub enum OperatorLog {
    Sled { db: sled::Db, tree: sled::Tree },
    Pg(std::sync::Arc<crate::pg::PgStore>),
}

/// A page of the log, newest first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogPage {
    pub entries: Vec<OperatorLogEntry>,
    pub next_cursor: Option<String>,
}

impl OperatorLog {
    /// Open the log in the hub's database.
    pub fn open(db: &sled::Db) -> Result<OperatorLog, StoreError> {
        Ok(OperatorLog::Sled {
            db: db.clone(),
            tree: db.open_tree("operator_log")?,
        })
    }

    /// The log in the PostgreSQL database (shared by every hub on it).
    pub fn postgres(store: std::sync::Arc<crate::pg::PgStore>) -> OperatorLog {
        OperatorLog::Pg(store)
    }

    /// Append an entry; durable on return.
    pub fn append(&self, mut e: OperatorLogEntry) -> Result<(), StoreError> {
        if let Some(q) = &mut e.query {
            if q.len() > MAX_QUERY_LEN {
                let mut cut = MAX_QUERY_LEN;
                while !q.is_char_boundary(cut) {
                    cut -= 1;
                }
                q.truncate(cut);
                q.push('…');
            }
        }
        let bytes = serde_json::to_vec(&e).map_err(|err| StoreError::Corrupt {
            key: "operator_log".into(),
            why: err.to_string(),
        })?;
        match self {
            OperatorLog::Sled { db, tree } => {
                let id = db.generate_id()?;
                tree.insert(id.to_be_bytes(), bytes)?;
                tree.flush()?;
            }
            OperatorLog::Pg(p) => p.oplog_append(&bytes)?,
        }
        Ok(())
    }

    /// At most `limit` entries, newest first, older than `cursor` (a previous page's
    /// `next_cursor`). `Ok(None)` for a cursor this log never handed out.
    pub fn page(&self, cursor: Option<&str>, limit: usize) -> Result<Option<LogPage>, StoreError> {
        let before = match cursor.map(str::parse::<u64>).transpose() {
            Ok(c) => c,
            Err(_) => return Ok(None),
        };
        let limit = limit.max(1);
        // One more than a page: whether there is a next one.
        let rows: Vec<(u64, Vec<u8>)> = match self {
            OperatorLog::Sled { tree, .. } => {
                let iter = match before {
                    None => tree.iter(),
                    Some(id) => tree.range(..id.to_be_bytes()),
                };
                let mut rows = Vec::new();
                for kv in iter.rev() {
                    let (k, v) = kv?;
                    let Ok(id) = <[u8; 8]>::try_from(k.as_ref()) else {
                        continue;
                    };
                    rows.push((u64::from_be_bytes(id), v.to_vec()));
                    if rows.len() > limit {
                        break;
                    }
                }
                rows
            }
            OperatorLog::Pg(p) => p.oplog_page(before, limit + 1)?,
        };
        let mut out = LogPage::default();
        for (i, (_, v)) in rows.iter().enumerate() {
            if i == limit {
                out.next_cursor = Some(rows[i - 1].0.to_string());
                break;
            }
            match serde_json::from_slice(v) {
                Ok(e) => out.entries.push(e),
                Err(err) => {
                    return Err(StoreError::Corrupt {
                        key: "operator_log".into(),
                        why: err.to_string(),
                    })
                }
            }
        }
        Ok(Some(out))
    }

    /// How many entries the log holds.
    pub fn len(&self) -> Result<usize, StoreError> {
        match self {
            OperatorLog::Sled { tree, .. } => Ok(tree.len()),
            OperatorLog::Pg(p) => p.oplog_len(),
        }
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}
