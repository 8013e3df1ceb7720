//! The on-demand fetch budget on PostgreSQL (schema `migrations/0003_fetch_budget.sql`): the
//! same rule as the in-memory budget ([`crate::fetch_budget::decide`]), with what each unit and
//! staff member fetched in the last hour kept in the database, so every hub on it counts
//! against one budget.
//!
//! A check is one transaction. It takes transaction-scoped advisory locks on the unit's and the
//! staff member's keys (always in that order, so two checks cannot deadlock), reads both sides'
//! counts, decides, then counts the patient (when served) and records the alerts it raised.

use edge_proto::nhs::NhsNumber;
use edge_proto::time::UnixMillis;
use tokio_postgres::Transaction;

use super::{block_on, client_mut, pg, PgStore};
use crate::server::fetch_budget::{decide, BudgetConfig, Decision, Side, Who, WINDOW_MS};
use crate::store::StoreError;

fn who_code(w: Who) -> i16 {
    match w {
        Who::Unit => 0,
        Who::Staff => 1,
    }
}

/// Lock a side's key for this transaction and read what it fetched in the window.
fn side(
    tx: &Transaction<'_>,
    who: Who,
    key: &str,
    nhs: &str,
    now: UnixMillis,
) -> Result<Side, StoreError> {
    let w = who_code(who);
    block_on(tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('kerbside-fetch:' || $1::text || ':' || $2::text, 0))",
        &[&i32::from(w).to_string(), &key],
    ))
    .map_err(pg)?;
    let since = now.0 - WINDOW_MS;
    // Rows out of the window no longer count: drop this side's.
    block_on(tx.execute(
        "DELETE FROM fetch_seen WHERE who = $1 AND key = $2 AND at <= $3",
        &[&w, &key, &since],
    ))
    .map_err(pg)?;
    let row = block_on(tx.query_one(
        "SELECT count(*), count(*) FILTER (WHERE nhs = $3) FROM fetch_seen \
         WHERE who = $1 AND key = $2",
        &[&w, &key, &nhs],
    ))
    .map_err(pg)?;
    let count: i64 = row.get(0);
    let holds: i64 = row.get(1);
    let mut last_alert = [None, None];
    for r in block_on(tx.query(
        "SELECT kind, at FROM fetch_alerted WHERE who = $1 AND key = $2",
        &[&w, &key],
    ))
    .map_err(pg)?
    {
        let kind: i16 = r.get(0);
        if let Some(slot) = usize::try_from(kind)
            .ok()
            .and_then(|k| last_alert.get_mut(k))
        {
            *slot = Some(UnixMillis(r.get(1)));
        }
    }
    Ok(Side {
        count: usize::try_from(count).unwrap_or(0),
        holds: holds > 0,
        last_alert,
    })
}

impl PgStore {
    /// Decide on one fetch of `nhs` by `device` for `staff` against the budget every hub on
    /// this database shares, and count it when served.
    pub fn fetch_check(
        &self,
        cfg: BudgetConfig,
        now: UnixMillis,
        device: &str,
        staff: &str,
        nhs: &NhsNumber,
    ) -> Result<Decision, StoreError> {
        let digits = nhs.as_digits();
        let mut c = self.conn()?;
        let tx = block_on(client_mut(&mut c).transaction()).map_err(pg)?;
        let unit = side(&tx, Who::Unit, device, &digits, now)?;
        let staff_side = side(&tx, Who::Staff, staff, &digits, now)?;
        let d = decide(cfg, now, &unit, &staff_side);
        for a in &d.alerts {
            let key = match a.who {
                Who::Unit => device,
                Who::Staff => staff,
            };
            let kind = i16::try_from(a.kind.index()).unwrap_or(0);
            block_on(tx.execute(
                "INSERT INTO fetch_alerted (who, key, kind, at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (who, key, kind) DO UPDATE SET at = EXCLUDED.at",
                &[&who_code(a.who), &key, &kind, &now.0],
            ))
            .map_err(pg)?;
        }
        if d.serve {
            for (who, key) in [(Who::Unit, device), (Who::Staff, staff)] {
                block_on(tx.execute(
                    "INSERT INTO fetch_seen (who, key, nhs, at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (who, key, nhs) DO NOTHING",
                    &[&who_code(who), &key, &digits, &now.0],
                ))
                .map_err(pg)?;
            }
        }
        // Now and then, rows of units and staff not seen for an hour go too (each side's own
        // are dropped whenever it fetches).
        if now.0.rem_euclid(64) == 0 {
            block_on(tx.execute(
                "DELETE FROM fetch_seen WHERE at <= $1",
                &[&(now.0 - WINDOW_MS)],
            ))
            .map_err(pg)?;
        }
        block_on(tx.commit()).map_err(pg)?;
        Ok(d)
    }
}
