//! The PostgreSQL schema's migrations: SQL files embedded in the binary, applied in version
//! order under `pg_advisory_lock`, each in its own transaction, recorded in
//! `schema_migrations` with the SHA-256 of its text (an applied migration whose text changed is
//! refused). Migrations only add, so a hub one version behind runs on a migrated database.

use tokio_postgres::Client;

use crate::store::StoreError;

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration this binary knows, in version order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "feed",
        sql: include_str!("migrations/0001_feed.sql"),
    },
    Migration {
        version: 2,
        name: "audit",
        sql: include_str!("migrations/0002_audit.sql"),
    },
    Migration {
        version: 3,
        name: "fetch_budget",
        sql: include_str!("migrations/0003_fetch_budget.sql"),
    },
    Migration {
        version: 4,
        name: "fleet_documents",
        sql: include_str!("migrations/0004_fleet_documents.sql"),
    },
    Migration {
        version: 5,
        name: "lz4",
        sql: include_str!("migrations/0005_lz4.sql"),
    },
    Migration {
        version: 6,
        name: "cohort_columns",
        sql: include_str!("migrations/0006_cohort_columns.sql"),
    },
    Migration {
        version: 7,
        name: "audit_review",
        sql: include_str!("migrations/0007_audit_review.sql"),
    },
    Migration {
        version: 8,
        name: "unit_history",
        sql: include_str!("migrations/0008_unit_history.sql"),
    },
];

/// The advisory lock every hub's migration run holds ("kerbside" in ASCII).
pub const LOCK_KEY: i64 = 0x6b65_7262_7369_6465;

/// What a migration run found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Versions applied by this run.
    pub applied: Vec<i32>,
    /// Versions in the database that this binary does not know (a newer hub migrated; they
    /// only add, so this hub carries on).
    pub unknown: Vec<i32>,
    /// The highest version in the database after the run.
    pub version: i32,
}

fn pg(e: impl std::fmt::Display) -> StoreError {
    StoreError::Pg(e.to_string())
}

fn checksum(sql: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, sql.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Apply every migration the database lacks. `client` must be a connection of its own: the
/// advisory lock is the session's and is released when it ends, even if this run fails.
pub async fn migrate(client: &mut Client) -> Result<Outcome, StoreError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(pg)?;
    let out = run(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await
        .map_err(pg);
    let out = out?;
    unlock?;
    Ok(out)
}

async fn run(client: &mut Client) -> Result<Outcome, StoreError> {
    // Created only when missing (IF NOT EXISTS alone logs a NOTICE at every hub start).
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(pg)?
        .get(0);
    if !exists {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 sha256 text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
            )
            .await
            .map_err(pg)?;
    }
    let rows = client
        .query("SELECT version, sha256 FROM schema_migrations", &[])
        .await
        .map_err(pg)?;
    let applied: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut out = Outcome::default();
    for (v, sum) in &applied {
        match MIGRATIONS.iter().find(|m| m.version == *v) {
            Some(m) if checksum(m.sql) != *sum => {
                return Err(StoreError::Pg(format!(
                    "migration {v} ({}) in the database differs from this binary's; refusing to run on it",
                    m.name
                )))
            }
            Some(_) => {}
            None => out.unknown.push(*v),
        }
    }
    for m in MIGRATIONS {
        if applied.iter().any(|(v, _)| *v == m.version) {
            continue;
        }
        let tx = client.transaction().await.map_err(pg)?;
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| StoreError::Pg(format!("migration {} ({}): {e}", m.version, m.name)))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        out.applied.push(m.version);
    }
    out.unknown.sort_unstable();
    out.version = applied
        .iter()
        .map(|(v, _)| *v)
        .chain(out.applied.iter().copied())
        .max()
        .unwrap_or(0);
    Ok(out)
}

/// The highest version this binary knows.
pub fn latest() -> i32 {
    MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}
