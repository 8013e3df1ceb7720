//! The fleet documents on PostgreSQL (schema `migrations/0004_fleet_documents.sql`): one copy
//! of the CRL, the token deny list and the inventory for every hub on the database. A copy is
//! replaced only by a higher version, in one statement, so hubs racing to store the same or
//! different files can never move a document backwards. See `crate::fleet_docs` for the rest.

use edge_proto::time::UnixMillis;

use super::{block_on, client, pg, PgStore};
use crate::store::StoreError;

/// What storing a document did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// It is now the database's copy.
    Stored,
    /// The database already holds this very document.
    Same,
    /// The database holds a newer version (`held`); nothing changed.
    Older { held: u64 },
    /// The database holds the same version with different bytes; nothing changed (two
    /// fleet directories, or a document edited without a new version).
    Conflict,
}

/// One document as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub kind: String,
    pub version: u64,
    pub sha256: Vec<u8>,
}

impl PgStore {
    /// Store `body` as the database's copy of `kind` at `version`, unless the database holds
    /// that version or a newer one. `by` (the hub's name) is kept beside it.
    pub fn store_fleet_document(
        &self,
        kind: &str,
        version: u64,
        body: &[u8],
        by: &str,
        now: UnixMillis,
    ) -> Result<Stored, StoreError> {
        let v = i64::try_from(version)
            .map_err(|_| StoreError::Pg(format!("{kind}: version {version} is too large")))?;
        let c = self.conn()?;
        let stored = block_on(client(&c).query_opt(
            "INSERT INTO fleet_document (kind, version, body, sha256, stored_at, stored_by) \
             VALUES ($1, $2, $3, sha256($3), $4, $5) \
             ON CONFLICT (kind) DO UPDATE SET version = EXCLUDED.version, body = EXCLUDED.body, \
               sha256 = EXCLUDED.sha256, stored_at = EXCLUDED.stored_at, stored_by = EXCLUDED.stored_by \
             WHERE fleet_document.version < EXCLUDED.version \
             RETURNING version",
            &[&kind, &v, &body, &now.0, &by],
        ))
        .map_err(pg)?;
        if stored.is_some() {
            return Ok(Stored::Stored);
        }
        let row = block_on(client(&c).query_one(
            "SELECT version, sha256 = sha256($2::bytea) FROM fleet_document WHERE kind = $1",
            &[&kind, &body],
        ))
        .map_err(pg)?;
        let held: i64 = row.get(0);
        let same: bool = row.get(1);
        Ok(if held > v {
            Stored::Older {
                held: u64::try_from(held).unwrap_or(0),
            }
        } else if same {
            Stored::Same
        } else {
            Stored::Conflict
        })
    }

    /// Every document's kind, version and SHA-256 (a cheap poll: no bodies).
    pub fn fleet_documents(&self) -> Result<Vec<Held>, StoreError> {
        let c = self.conn()?;
        let rows = block_on(client(&c).query(
            "SELECT kind, version, sha256 FROM fleet_document ORDER BY kind",
            &[],
        ))
        .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| Held {
                kind: r.get(0),
                version: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                sha256: r.get(2),
            })
            .collect())
    }

    /// One document's version and bytes, if the database holds it.
    pub fn fleet_document(&self, kind: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let c = self.conn()?;
        let row = block_on(client(&c).query_opt(
            "SELECT version, body FROM fleet_document WHERE kind = $1",
            &[&kind],
        ))
        .map_err(pg)?;
        Ok(row.map(|r| (u64::try_from(r.get::<_, i64>(0)).unwrap_or(0), r.get(1))))
    }
}
