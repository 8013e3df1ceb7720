//! The operator log: every admin API call, with the operator's identity, in the sled tree
//! `operator_log` of the hub's database, read with `GET /admin/operator-log` (privacy role).
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
pub struct OperatorLog {
    db: sled::Db,
    tree: sled::Tree,
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
        Ok(OperatorLog {
            db: db.clone(),
            tree: db.open_tree("operator_log")?,
        })
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
        let id = self.db.generate_id()?;
        let bytes = serde_json::to_vec(&e).map_err(|err| StoreError::Corrupt {
            key: "operator_log".into(),
            why: err.to_string(),
        })?;
        self.tree.insert(id.to_be_bytes(), bytes)?;
        self.tree.flush()?;
        Ok(())
    }

    /// At most `limit` entries, newest first, older than `cursor` (a previous page's
    /// `next_cursor`). `Ok(None)` for a cursor this log never handed out.
    pub fn page(&self, cursor: Option<&str>, limit: usize) -> Result<Option<LogPage>, StoreError> {
        let iter = match cursor {
            None => self.tree.iter(),
            Some(c) => match c.parse::<u64>() {
                Ok(id) => self.tree.range(..id.to_be_bytes()),
                Err(_) => return Ok(None),
            },
        };
        let limit = limit.max(1);
        let mut out = LogPage::default();
        let mut last = None;
        for kv in iter.rev() {
            let (k, v) = kv?;
            if out.entries.len() >= limit {
                out.next_cursor = last.map(|id: u64| id.to_string());
                break;
            }
            let Ok(id) = <[u8; 8]>::try_from(k.as_ref()) else {
                continue;
            };
            match serde_json::from_slice(&v) {
                Ok(e) => out.entries.push(e),
                Err(err) => {
                    return Err(StoreError::Corrupt {
                        key: "operator_log".into(),
                        why: err.to_string(),
                    })
                }
            }
            last = Some(u64::from_be_bytes(id));
        }
        Ok(Some(out))
    }

    /// How many entries the log holds.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}
